//! yamux sessions over a byte stream, compatible with hashicorp/yamux v0.1.2, and the
//! agentserver stream header that starts every tunnel stream.
//!
//! * [`frame`]: the 12-byte yamux frame header and an incremental decoder.
//! * [`session`]: [`Session::new`] runs a session over any `AsyncRead + AsyncWrite` and hands
//!   back a [`Control`] (open streams, ping, close) and the [`Incoming`] streams.
//! * [`header`]: the `[type:1][len:4 BE][meta]` stream header (spec §6.4).
//! * [`ws`]: a WebSocket as a byte stream ([`WsByteStream`]).
//!
//! Why not the `yamux` crate: it acknowledges an inbound stream only when the application first
//! uses it (lazily), while the agentserver server (hashicorp yamux) closes the whole session
//! when a `SYN` is not acknowledged within 75 s — an HTTP stream to a slow backend would kill
//! the tunnel. It also applies its own window and keepalive policy. This crate ACKs every
//! inbound stream the moment its `SYN` arrives. See `docs/decisions/tunnel.md`.

pub mod frame;
pub mod header;
pub mod session;
pub mod ws;

pub use header::{HeaderError, MAX_META_LEN, StreamType, read_header, write_header};
pub use session::{
    Config, Control, Error, INITIAL_WINDOW, Incoming, Mode, ProtocolError, Session, SessionError,
    Stream,
};
pub use ws::{WsByteStream, WsData, WsMessage};
