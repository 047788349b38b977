//! Why a session ended and why an operation failed.

use std::io;
use std::sync::Arc;

use crate::frame::FrameError;

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
    /// [`Control::close`](super::Control::close) or [`Control::abort`](super::Control::abort) was called, or every [`Control`](super::Control) was dropped.
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
    /// An outbound stream was not acknowledged in time (see [`Config::stream_open_timeout`](super::Config::stream_open_timeout)).
    #[error("stream {0} was not acknowledged within the stream-open timeout")]
    StreamOpenTimeout(u32),
    /// A keepalive ping was not answered.
    #[error("keepalive ping was not answered")]
    KeepaliveTimeout,
    /// A write to the connection did not finish in time.
    #[error("writing to the connection timed out")]
    WriteTimeout,
}

/// Errors of [`Control`](super::Control) operations.
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
