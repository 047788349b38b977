//! A WebSocket turned into a byte stream (spec §6.4 "Transport adaptation").
//!
//! Every write (a vectored one included) becomes one binary message; reads concatenate the
//! payloads of binary **and** text messages (message boundaries carry no meaning); ping/pong are left to the WebSocket
//! library, which answers pings while it is being read — the yamux session reads continuously,
//! so pings are answered even while streams are busy. A close message reads as end of stream;
//! shutting the writer down sends a close message with code 1000 and an empty reason.
//!
//! The adapter is generic over any `Stream<Item = Result<M, E>> + Sink<M>` whose message type
//! implements [`WsMessage`]; implementations for tokio-tungstenite (feature `tungstenite`) and
//! axum (feature `axum`) are included.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a received WebSocket message means for the byte stream.
#[derive(Debug)]
pub enum WsData {
    /// Payload bytes to append to the stream.
    Data(Bytes),
    /// The peer closed the WebSocket: end of stream.
    Close,
    /// Nothing for the byte stream (ping, pong, raw frame).
    Skip,
}

/// A WebSocket message type the adapter can use.
pub trait WsMessage: Sized {
    /// A binary message carrying `data`.
    fn binary(data: Bytes) -> Self;
    /// A close message with code 1000 (normal closure) and an empty reason.
    fn close_normal() -> Self;
    /// Classifies a received message.
    fn into_data(self) -> WsData;
}

/// A WebSocket as an `AsyncRead + AsyncWrite` byte stream.
#[derive(Debug)]
pub struct WsByteStream<S> {
    inner: S,
    pending: Bytes,
    eof: bool,
    close_sent: bool,
}

impl<S> WsByteStream<S> {
    /// Wraps a WebSocket.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            eof: false,
            close_sent: false,
        }
    }

    /// The wrapped WebSocket.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn to_io<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::other(e)
}

impl<S, M, E> AsyncRead for WsByteStream<S>
where
    S: Stream<Item = Result<M, E>> + Unpin,
    M: WsMessage,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => this.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(m)) => match m.into_data() {
                    WsData::Data(b) => this.pending = b,
                    WsData::Close => this.eof = true,
                    WsData::Skip => {}
                },
            }
        }
    }
}

impl<S, M, E> AsyncWrite for WsByteStream<S>
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Unpin,
    M: WsMessage,
    <S as Sink<M>>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut this.inner)
            .start_send(M::binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    /// All the slices become one message (one copy, as a single write): a yamux header and
    /// its body travel together instead of as a 12-byte message and a second one.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        let len = bufs.iter().map(|b| b.len()).sum();
        let mut message = bytes::BytesMut::with_capacity(len);
        for b in bufs {
            message.extend_from_slice(b);
        }
        Pin::new(&mut this.inner)
            .start_send(M::binary(message.freeze()))
            .map_err(to_io)?;
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
            Pin::new(&mut this.inner)
                .start_send(M::close_normal())
                .map_err(to_io)?;
            this.close_sent = true;
        }
        Pin::new(&mut this.inner).poll_close(cx).map_err(to_io)
    }
}

#[cfg(feature = "tungstenite")]
mod tungstenite_impl {
    use super::{WsData, WsMessage};
    use bytes::Bytes;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    impl WsMessage for Message {
        fn binary(data: Bytes) -> Self {
            Message::Binary(data)
        }

        fn close_normal() -> Self {
            Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
        }

        fn into_data(self) -> WsData {
            match self {
                Message::Binary(b) => WsData::Data(b),
                Message::Text(t) => WsData::Data(Bytes::from(t)),
                Message::Close(_) => WsData::Close,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => WsData::Skip,
            }
        }
    }
}

#[cfg(feature = "axum")]
mod axum_impl {
    use super::{WsData, WsMessage};
    use axum::extract::ws::{CloseFrame, Message, close_code};
    use bytes::Bytes;

    impl WsMessage for Message {
        fn binary(data: Bytes) -> Self {
            Message::Binary(data)
        }

        fn close_normal() -> Self {
            Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            }))
        }

        fn into_data(self) -> WsData {
            match self {
                Message::Binary(b) => WsData::Data(b),
                Message::Text(t) => WsData::Data(Bytes::from(t)),
                Message::Close(_) => WsData::Close,
                Message::Ping(_) | Message::Pong(_) => WsData::Skip,
            }
        }
    }
}
